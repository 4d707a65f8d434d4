// Package cluster is the agent's Kubernetes adapter. A Cluster reads the
// labelled CA sources and the agent's own Node through informers (caches
// that hold only certificate keys, never a private key), and publishes each
// sync's outcome: the pkg/annotation Status as Node annotations and the
// NodeTrustReady condition, Events on rejected sources and on registries
// that do not verify, and the removal of the startup taint. It implements
// the interfaces pkg/agent defines (Inputs, Publisher, TaintRemover,
// Unpublisher); it talks to the API through API, which pkg/kube implements.
//
// cluster.go reads (informers, Collect), node.go writes the Node
// (annotations, condition, taint, Unpublish) and events.go creates the
// Events.
package cluster

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/nodetrust/nodetrust/pkg/source"
)

// API is what a Cluster needs from the Kubernetes API; kube.Client
// implements it (clustertest.API fakes it).
type API interface {
	ListWatch(resource, namespace string, tweak func(*metav1.ListOptions)) cache.ListerWatcher
	PatchNode(ctx context.Context, name string, pt types.PatchType, patch []byte, subresources ...string) error
	CreateEvent(ctx context.Context, ev *corev1.Event) error
}

// Cluster reads sources from the Kubernetes API through informers and
// publishes the node's status as Node annotations and Events.
type Cluster struct {
	api        API
	nodeName   string
	namespaces []string
	now        func() time.Time

	informers []cache.SharedIndexInformer
	secrets   []corelisters.SecretLister
	configMap []corelisters.ConfigMapLister
	nodes     corelisters.NodeLister

	objects     map[source.ID]corev1.ObjectReference // of the last Collect, for Events
	lastPatched map[string]string                    // the annotations last patched, without synced-at
	lastCond    corev1.NodeCondition                 // last NodeTrustReady patched
	emitted     map[source.ID]string                 // rejection reason already reported
	verifyEv    map[string]bool                      // verification Events already created, by name

	// While Wait blocks: when it started and the informers' last error.
	waitMu    sync.Mutex
	waitSince time.Time
	waitErr   error
	synced    bool
}

// New watches labelled sources in namespaces and the Node nodeName.
func New(api API, nodeName string, namespaces []string) *Cluster {
	return &Cluster{api: api, nodeName: nodeName, namespaces: namespaces, now: time.Now, emitted: map[source.ID]string{}}
}

// informer makes an informer for one resource, with a transform applied
// before objects enter the cache.
func (c *Cluster) informer(resource, namespace string, obj runtime.Object, tweak func(*metav1.ListOptions),
	transform cache.TransformFunc, handler cache.ResourceEventHandler) (cache.SharedIndexInformer, error) {
	inf := cache.NewSharedIndexInformer(c.api.ListWatch(resource, namespace, tweak), obj, 0,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := inf.SetTransform(transform); err != nil {
		return nil, err
	}
	if _, err := inf.AddEventHandler(handler); err != nil {
		return nil, err
	}
	if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) { c.setWaitErr(err) }); err != nil {
		return nil, err
	}
	c.informers = append(c.informers, inf)
	return inf, nil
}

// Wait starts the informers and blocks until their caches are synced.
func (c *Cluster) Wait(ctx context.Context, notify func()) error {
	c.waitMu.Lock()
	c.waitSince = c.now()
	c.waitMu.Unlock()
	if err := c.informSources(notify); err != nil {
		return err
	}
	if err := c.informNode(notify); err != nil {
		return err
	}
	synced := make([]cache.InformerSynced, len(c.informers))
	for i, inf := range c.informers {
		go inf.RunWithContext(ctx)
		synced[i] = inf.HasSynced
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("caches did not sync: %w", ctx.Err())
	}
	c.waitMu.Lock()
	c.synced = true
	c.waitMu.Unlock()
	return nil
}

// informSources makes the informers of the labelled Secrets and ConfigMaps
// of every namespace; any change of theirs calls notify.
func (c *Cluster) informSources(notify func()) error {
	onChange := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	labelled := func(o *metav1.ListOptions) { o.LabelSelector = source.LabelCA + "=true" }
	for _, ns := range c.namespaces {
		si, err := c.informer("secrets", ns, &corev1.Secret{}, labelled, stripNonCertData, onChange)
		if err != nil {
			return err
		}
		ci, err := c.informer("configmaps", ns, &corev1.ConfigMap{}, labelled, stripNonCertData, onChange)
		if err != nil {
			return err
		}
		c.secrets = append(c.secrets, corelisters.NewSecretLister(si.GetIndexer()))
		c.configMap = append(c.configMap, corelisters.NewConfigMapLister(ci.GetIndexer()))
	}
	return nil
}

// informNode makes the informer of the agent's own Node; its creation,
// deletion and a change of its labels call notify.
func (c *Cluster) informNode(notify func()) error {
	ownNode := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.nodeName).String()
	}
	ni, err := c.informer("nodes", "", &corev1.Node{}, ownNode, stripManagedFields, cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { notify() },
		UpdateFunc: func(oldObj, newObj any) {
			o, n := oldObj.(*corev1.Node), newObj.(*corev1.Node)
			if !maps.Equal(o.Labels, n.Labels) { // our own annotation patches are not a reason to sync
				notify()
			}
		},
		DeleteFunc: func(any) { notify() },
	})
	if err != nil {
		return err
	}
	c.nodes = corelisters.NewNodeLister(ni.GetIndexer())
	return nil
}

func (c *Cluster) setWaitErr(err error) {
	c.waitMu.Lock()
	c.waitErr = err
	c.waitMu.Unlock()
}

// Waiting says, while Wait has not returned, for how long the agent has been
// waiting for the API server and its last error; "" once the caches synced.
func (c *Cluster) Waiting() string {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if c.synced || c.waitSince.IsZero() {
		return ""
	}
	msg := fmt.Sprintf("waiting for the API server for %s", c.now().Sub(c.waitSince).Round(time.Second))
	if c.waitErr != nil {
		msg += ": " + c.waitErr.Error()
	}
	return msg
}

// stripNonCertData keeps only certificate keys of cached sources, so the
// agent never holds private keys (tls.key) and its cache stays small.
func stripNonCertData(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Secret:
		o.ManagedFields = nil
		maps.DeleteFunc(o.Data, func(k string, _ []byte) bool { return !source.IsCertKey(k) })
		maps.DeleteFunc(o.StringData, func(k string, _ string) bool { return !source.IsCertKey(k) })
	case *corev1.ConfigMap:
		o.ManagedFields = nil
		maps.DeleteFunc(o.Data, func(k string, _ string) bool { return !source.IsCertKey(k) })
		maps.DeleteFunc(o.BinaryData, func(k string, _ []byte) bool { return !source.IsCertKey(k) })
	}
	return obj, nil
}

func stripManagedFields(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
	}
	return obj, nil
}

// Collect reads the desired set from the caches.
func (c *Cluster) Collect() (source.Set, labels.Set) {
	var set source.Set
	now := c.now()
	c.objects = map[source.ID]corev1.ObjectReference{}
	add := func(src source.Source, err error, ref corev1.ObjectReference) {
		id := source.ID{Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name}
		c.objects[id] = ref
		if err != nil {
			set.Rejected = append(set.Rejected, rejection(id, err))
			return
		}
		set.Sources = append(set.Sources, src)
	}
	for i, ns := range c.namespaces {
		secrets, err := c.secrets[i].Secrets(ns).List(labels.Everything())
		if err != nil {
			set.Errors = append(set.Errors, err)
		}
		for _, s := range secrets {
			if source.Labelled(s.Labels) {
				src, err := source.FromSecret(s, now)
				add(src, err, ref(source.KindSecret, &s.ObjectMeta))
			}
		}
		cms, err := c.configMap[i].ConfigMaps(ns).List(labels.Everything())
		if err != nil {
			set.Errors = append(set.Errors, err)
		}
		for _, cm := range cms {
			if source.Labelled(cm.Labels) {
				src, err := source.FromConfigMap(cm, now)
				add(src, err, ref(source.KindConfigMap, &cm.ObjectMeta))
			}
		}
	}
	set.Sort()
	n, err := c.nodes.Get(c.nodeName)
	if err != nil {
		// Without the Node, selectors cannot be evaluated: keep what applies.
		set.Errors = append(set.Errors, fmt.Errorf("node %s: %w", c.nodeName, err))
		return set, labels.Set{}
	}
	return set, labels.Set(n.Labels)
}

// RuntimeVersion is the container runtime version the kubelet reports for
// this Node (status.nodeInfo.containerRuntimeVersion, such as
// "containerd://1.7.23"), or "" when the Node is not cached yet.
func (c *Cluster) RuntimeVersion() string {
	if c.nodes == nil { // informers not started (uninstall)
		return ""
	}
	n, err := c.nodes.Get(c.nodeName)
	if err != nil {
		return ""
	}
	return n.Status.NodeInfo.ContainerRuntimeVersion
}

func rejection(id source.ID, err error) *source.Rejection {
	if r, ok := err.(*source.Rejection); ok {
		return r
	}
	return &source.Rejection{ID: id, Reason: err.Error()}
}

func ref(kind string, m *metav1.ObjectMeta) corev1.ObjectReference {
	return corev1.ObjectReference{Kind: kind, APIVersion: "v1", Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion}
}
