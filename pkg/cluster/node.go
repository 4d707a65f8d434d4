package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
)

// ConditionType is annotation.ConditionType, as a Node condition type.
const ConditionType corev1.NodeConditionType = annotation.ConditionType

// Publish patches the Node's annotations when a value changed and creates
// one Event per rejection, shared by every node.
func (c *Cluster) Publish(ctx context.Context, st annotation.Status, rep reconcile.Report) (agent.Published, error) {
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
