package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// EventReason is the reason of the Event emitted for a rejected source.
const EventReason = "Rejected"

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
func (c *Cluster) PublishVerification(ctx context.Context, rep reconcile.Report, results []agent.Verification) (int, error) {
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
