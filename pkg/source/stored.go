package source

import (
	"fmt"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/certs"
	"github.com/nodetrust/nodetrust/pkg/registry"
)

// Stored is the JSON form of an applied source. The node keeps the sources
// it applied in its ownership record, so that a source that is later
// rejected, or that cannot be read, keeps its last applied files.
type Stored struct {
	ID
	Registries   []registry.Host `json:"registries,omitempty"`
	HostTrust    bool            `json:"hostTrust,omitempty"`
	NodeSelector string          `json:"nodeSelector,omitempty"`
	Certs        string          `json:"certs"` // PEM
}

// Store returns the stored form of s. Warnings are not stored.
func (s Source) Store() Stored {
	st := Stored{ID: s.ID, Registries: s.Registries, HostTrust: s.HostTrust, Certs: string(certs.EncodePEM(s.Certs))}
	if s.NodeSelector != nil {
		st.NodeSelector = s.NodeSelector.String()
	}
	return st
}

// Source rebuilds the source from its stored form.
func (st Stored) Source() (Source, error) {
	s := Source{ID: st.ID, Registries: st.Registries, HostTrust: st.HostTrust}
	if st.NodeSelector != "" {
		sel, err := labels.Parse(st.NodeSelector)
		if err != nil {
			return Source{}, fmt.Errorf("stored %s: node selector: %w", st.ID, err)
		}
		s.NodeSelector = sel
	}
	cs, _, err := certs.Parse([]byte(st.Certs))
	if err != nil || len(cs) == 0 {
		return Source{}, fmt.Errorf("stored %s: certificates do not parse: %v", st.ID, err)
	}
	s.Certs = cs
	return s, nil
}
