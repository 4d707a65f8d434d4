// Package clustertest adapts client-go's fake clientset to cluster.API, for
// the tests of pkg/cluster and of the agent driving it. The real
// cluster.API, kube.Client, is tested against a real API server in
// test/cluster.
package clustertest

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// API is a cluster.API over a fake clientset: secrets, configmaps and
// nodes to list and watch, Node patches and Events.
type API struct{ Client *fake.Clientset }

// ListWatch lists and watches resource ("secrets", "configmaps", or else
// nodes) in namespace, with tweak applied to the options.
func (f API) ListWatch(resource, namespace string, tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	ctx := context.Background()
	return &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			switch resource {
			case "secrets":
				return f.Client.CoreV1().Secrets(namespace).List(ctx, o)
			case "configmaps":
				return f.Client.CoreV1().ConfigMaps(namespace).List(ctx, o)
			default:
				return f.Client.CoreV1().Nodes().List(ctx, o)
			}
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			switch resource {
			case "secrets":
				return f.Client.CoreV1().Secrets(namespace).Watch(ctx, o)
			case "configmaps":
				return f.Client.CoreV1().ConfigMaps(namespace).Watch(ctx, o)
			default:
				return f.Client.CoreV1().Nodes().Watch(ctx, o)
			}
		},
	}
}

// PatchNode patches the Node name (or its subresources).
func (f API) PatchNode(ctx context.Context, name string, pt types.PatchType, patch []byte, subresources ...string) error {
	_, err := f.Client.CoreV1().Nodes().Patch(ctx, name, pt, patch, metav1.PatchOptions{}, subresources...)
	return err
}

// CreateEvent creates ev in its namespace.
func (f API) CreateEvent(ctx context.Context, ev *corev1.Event) error {
	_, err := f.Client.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	return err
}
