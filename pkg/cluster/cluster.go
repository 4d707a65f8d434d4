// Package cluster is the agent's Kubernetes adapter. A Cluster reads the
// labelled CA sources and the agent's own Node through informers (caches
// that hold only certificate keys, never a private key), and publishes each
// sync's outcome: the pkg/annotation Status as Node annotations and the
// NodeTrustReady condition, Events on rejected sources and on registries
// that do not verify, and the removal of the startup taint. It implements
// the interfaces pkg/agent defines (Inputs, Publisher, TaintRemover,
// Unpublisher); it talks to the API through API, which pkg/kube implements.
package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/node"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// ConditionType is annotation.ConditionType, as a Node condition type.
const ConditionType corev1.NodeConditionType = annotation.ConditionType

// EventReason is the reason of the Event emitted for a rejected source.
const EventReason = "Rejected"

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

// Publish patches the Node's annotations when a value changed and creates
// one Event per rejection, shared by every node.
func (c *Cluster) Publish(ctx context.Context, st annotation.Status, rep node.Report) (agent.Published, error) {
	var pub agent.Published
	events, evErr := c.emitEvents(ctx, rep.Rejected)
	pub.Events = events
	patched, err := c.patchNode(ctx, st)
	pub.Patched = patched
	if err == nil {
		pub.Patched, err = c.patchCondition(ctx, st)
		pub.Patched = pub.Patched || patched
	}
	if err == nil {
		err = evErr
	}
	return pub, err
}

// condition is the NodeTrustReady condition for st, without times.
func condition(st annotation.Status) corev1.NodeCondition {
	want := st.Condition()
	c := corev1.NodeCondition{Type: ConditionType, Status: corev1.ConditionFalse, Reason: want.Reason, Message: want.Message}
	if want.True {
		c.Status = corev1.ConditionTrue
	}
	return c
}

// patchCondition sets the NodeTrustReady condition through nodes/status when
// its status, reason or message changed; the transition time moves only with
// the status.
func (c *Cluster) patchCondition(ctx context.Context, st annotation.Status) (bool, error) {
	want := condition(st)
	same := func(a corev1.NodeCondition) bool {
		return a.Status == want.Status && a.Reason == want.Reason && a.Message == want.Message
	}
	if c.lastCond.Type != "" && same(c.lastCond) {
		return false, nil
	}
	now := metav1.NewTime(c.now().UTC().Truncate(time.Second))
	want.LastHeartbeatTime, want.LastTransitionTime = now, now
	if n, err := c.nodes.Get(c.nodeName); err == nil {
		for _, have := range n.Status.Conditions {
			if have.Type != ConditionType {
				continue
			}
			if same(have) {
				c.lastCond = have
				return false, nil
			}
			if have.Status == want.Status {
				want.LastTransitionTime = have.LastTransitionTime
			}
		}
	}
	data, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{want}}})
	if err != nil {
		return false, err
	}
	if err := c.api.PatchNode(ctx, c.nodeName, types.StrategicMergePatchType, data, "status"); err != nil {
		return false, fmt.Errorf("patch node %s status: %w", c.nodeName, err)
	}
	c.lastCond = want
	return true, nil
}

// RemoveTaint removes every taint with key from the Node (the startup
// taint a kubelet or provisioner registers it with). It reports whether the
// Node is free of it; a concurrent change of the taints fails the patch's
// test and is retried on the next sync.
func (c *Cluster) RemoveTaint(ctx context.Context, key string) (bool, error) {
	n, err := c.nodes.Get(c.nodeName)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", c.nodeName, err)
	}
	kept := make([]corev1.Taint, 0, len(n.Spec.Taints))
	for _, t := range n.Spec.Taints {
		if t.Key != key {
			kept = append(kept, t)
		}
	}
	if len(kept) == len(n.Spec.Taints) {
		return true, nil
	}
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/spec/taints", "value": n.Spec.Taints},
		{"op": "replace", "path": "/spec/taints", "value": kept},
	})
	if err != nil {
		return false, err
	}
	if err := c.api.PatchNode(ctx, c.nodeName, types.JSONPatchType, patch); err != nil {
		return false, fmt.Errorf("remove taint %s from node %s: %w", key, c.nodeName, err)
	}
	return true, nil
}

func (c *Cluster) patchNode(ctx context.Context, st annotation.Status) (bool, error) {
	want := annotation.Encode(st, time.Time{})
	if maps.Equal(want, c.lastPatched) {
		return false, nil
	}
	if n, err := c.nodes.Get(c.nodeName); err == nil && hasAnnotations(n.Annotations, want) {
		c.lastPatched = want
		return false, nil
	}
	patch := map[string]any{"metadata": map[string]any{"annotations": annotation.Encode(st, c.now())}}
	data, err := json.Marshal(patch)
	if err != nil {
		return false, err
	}
	if err := c.api.PatchNode(ctx, c.nodeName, types.MergePatchType, data); err != nil {
		return false, fmt.Errorf("patch node %s: %w", c.nodeName, err)
	}
	c.lastPatched = want
	return true, nil
}

func hasAnnotations(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// emitEvents creates an Event for each new rejection. Its name is derived
// from the source and the reason, so when many nodes reject the same source
// the first creates it and the others find it there.
func (c *Cluster) emitEvents(ctx context.Context, rejected []*source.Rejection) (int, error) {
	current := map[source.ID]bool{}
	created := 0
	var firstErr error
	for _, r := range rejected {
		current[r.ID] = true
		if c.emitted[r.ID] == r.Reason {
			continue
		}
		made, err := c.createEvent(ctx, c.event(r.ID, EventReason, r.Reason))
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		created += made
		c.emitted[r.ID] = r.Reason
	}
	for id := range c.emitted {
		if !current[id] {
			delete(c.emitted, id)
		}
	}
	return created, firstErr
}

// event is the Event about source id with reason and message. Its name is
// derived from all three, so nodes that report the same thing share it.
func (c *Cluster) event(id source.ID, reason, message string) *corev1.Event {
	key := id.String() + "\x00" + message
	if reason != EventReason {
		key = reason + "\x00" + key
	}
	sum := sha256.Sum256([]byte(key))
	name := id.Name
	if len(name) > 200 {
		name = name[:200]
	}
	obj, ok := c.objects[id]
	if !ok {
		obj = corev1.ObjectReference{Kind: id.Kind, APIVersion: "v1", Namespace: id.Namespace, Name: id.Name}
	}
	now := metav1.NewTime(c.now())
	return &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: name + ".nodetrust-" + hex.EncodeToString(sum[:])[:10], Namespace: id.Namespace},
		InvolvedObject:      obj,
		Reason:              reason,
		Message:             annotation.OneLine(message),
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: "nodetrust", Host: c.nodeName},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "nodetrust.io/agent",
		ReportingInstance:   c.nodeName,
	}
}

// EventReasonNotVerified is the reason of the Event emitted on a source
// whose registry does not verify from a node.
const EventReasonNotVerified = "RegistryNotVerified"

// PublishVerification creates one Event per source and failure reason for
// each registry that does not verify (a TLS failure: unreachable registries
// make none). Nodes that find the same share the Event.
func (c *Cluster) PublishVerification(ctx context.Context, rep node.Report, results []agent.Verification) (int, error) {
	if c.verifyEv == nil {
		c.verifyEv = map[string]bool{}
	}
	failed := map[string]string{}
	for _, r := range results {
		if !r.OK && !r.Unreachable {
			failed[r.Registry] = r.Reason
		}
	}
	created := 0
	var firstErr error
	current := map[string]bool{}
	for _, s := range rep.Applied {
		for _, reg := range s.Registries {
			reason, bad := failed[string(reg)]
			if !bad {
				continue
			}
			ev := c.event(s.ID, EventReasonNotVerified, fmt.Sprintf("registry %s does not verify: %s", reg, reason))
			current[ev.Name] = true
			if c.verifyEv[ev.Name] {
				continue
			}
			made, err := c.createEvent(ctx, ev)
			if err != nil {
				firstErr = cmp.Or(firstErr, err)
				continue
			}
			created += made
			c.verifyEv[ev.Name] = true
		}
	}
	for name := range c.verifyEv {
		if !current[name] {
			delete(c.verifyEv, name)
		}
	}
	return created, firstErr
}

// createEvent creates ev; one that another node created already counts as
// reported (0 created).
func (c *Cluster) createEvent(ctx context.Context, ev *corev1.Event) (int, error) {
	err := c.api.CreateEvent(ctx, ev)
	switch {
	case err == nil:
		return 1, nil
	case apierrors.IsAlreadyExists(err):
		return 0, nil
	}
	return 0, fmt.Errorf("create event for %s %s/%s: %w", ev.InvolvedObject.Kind, ev.InvolvedObject.Namespace, ev.InvolvedObject.Name, err)
}

// Unpublish removes nodetrust's annotations and its NodeTrustReady
// condition from the Node.
func (c *Cluster) Unpublish(ctx context.Context) error {
	gone := map[string]any{}
	for _, k := range annotation.Keys() {
		gone[k] = nil
	}
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": gone}})
	if err != nil {
		return err
	}
	if err := c.api.PatchNode(ctx, c.nodeName, types.MergePatchType, data); err != nil {
		return fmt.Errorf("remove annotations of node %s: %w", c.nodeName, err)
	}
	cond, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []map[string]any{{"type": ConditionType, "$patch": "delete"}}}})
	if err != nil {
		return err
	}
	if err := c.api.PatchNode(ctx, c.nodeName, types.StrategicMergePatchType, cond, "status"); err != nil {
		return fmt.Errorf("remove the %s condition of node %s: %w", ConditionType, c.nodeName, err)
	}
	return nil
}
