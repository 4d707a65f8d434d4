// Command image builds the nodetrust container image from a static binary,
// with no Docker daemon and no base image: one layer holding /nodetrust,
// entrypoint ["/nodetrust"]. It writes a docker-archive tarball (the
// `docker save` format), which `ctr images import`, `docker load`,
// `podman load`, `kind load image-archive` and `skopeo copy docker-archive:`
// all read.
//
//	go run . -bin ../../bin/nodetrust -o ../../bin/nodetrust-image.tar \
//	    -tag ghcr.io/nodetrust/nodetrust:v0.2.0
//
// The output is reproducible: file times and the image's creation time come
// from $SOURCE_DATE_EPOCH (default 0), so one binary always gives one digest.
//
// It lives in its own module so the agent's go.mod does not carry
// go-containerregistry; its tests are in test/image, which builds and runs
// it as a command.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// binaryPath is where the binary sits in the image, and its entrypoint.
const binaryPath = "/nodetrust"

// options are the command-line inputs of one build.
type options struct {
	bin      string
	out      string
	tag      name.Tag
	platform v1.Platform
	created  time.Time
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	img, err := build(opts)
	if err != nil {
		return err
	}
	if err := writeArchive(opts.out, opts.tag, img); err != nil {
		return err
	}
	return report(stdout, opts, img)
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "", "static nodetrust binary to put at "+binaryPath+" (required)")
	out := fs.String("o", "nodetrust-image.tar", "docker-archive tarball to write")
	tag := fs.String("tag", "ghcr.io/nodetrust/nodetrust:dev", "image reference recorded in the archive")
	platform := fs.String("platform", "linux/amd64", "os/arch[/variant] of the binary")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *bin == "" {
		return options{}, errors.New("-bin is required")
	}
	ref, err := name.NewTag(*tag, name.StrictValidation)
	if err != nil {
		return options{}, fmt.Errorf("-tag: %w", err)
	}
	p, err := v1.ParsePlatform(*platform)
	if err != nil {
		return options{}, fmt.Errorf("-platform: %w", err)
	}
	created, err := sourceDateEpoch()
	if err != nil {
		return options{}, err
	}
	return options{bin: *bin, out: *out, tag: ref, platform: *p, created: created}, nil
}

// sourceDateEpoch is the reproducible-builds timestamp, the Unix epoch when unset.
func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", v, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// build returns the image: the binary as the only layer on an empty base.
func build(opts options) (v1.Image, error) {
	data, err := os.ReadFile(opts.bin)
	if err != nil {
		return nil, err
	}
	if err := checkBinary(data, opts.platform); err != nil {
		return nil, fmt.Errorf("%s: %w", opts.bin, err)
	}
	layer, err := binaryLayer(data, opts.created)
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: opts.created},
			CreatedBy: "nodetrust tools/image: COPY nodetrust " + binaryPath,
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: opts.created}
	cf.OS = opts.platform.OS
	cf.Architecture = opts.platform.Architecture
	cf.Variant = opts.platform.Variant
	cf.Config.Entrypoint = []string{binaryPath}
	cf.Config.Cmd = nil
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "nodetrust",
		"org.opencontainers.image.source":  "https://github.com/nodetrust/nodetrust",
		"org.opencontainers.image.version": opts.tag.TagStr(),
	}
	return mutate.ConfigFile(img, cf)
}

// elfMachines maps GOARCH-style architectures to ELF machine types.
var elfMachines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

// checkBinary refuses what would not run in an image without a base: not an
// ELF file, another architecture, or a dynamically linked binary (whose
// missing loader shows up as a baffling "no such file or directory").
func checkBinary(data []byte, p v1.Platform) error {
	if p.OS != "linux" {
		return fmt.Errorf("platform %s: only linux images are supported", p.String())
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	want, ok := elfMachines[p.Architecture]
	if !ok {
		return fmt.Errorf("platform %s: unknown architecture", p.String())
	}
	if f.Machine != want {
		return fmt.Errorf("built for %s, want %s (%s)", f.Machine, want, p.String())
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New("dynamically linked: build it with CGO_ENABLED=0")
		}
	}
	return nil
}

// binaryLayer is a gzipped tar holding the binary at binaryPath, root-owned,
// mode 0755, with a fixed time.
func binaryLayer(data []byte, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     binaryPath[1:],
		Mode:     0o755,
		Size:     int64(len(data)),
		ModTime:  mtime,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	// gzip.BestCompression takes 3x as long for under 1% on the agent binary.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithCompressionLevel(gzip.DefaultCompression))
}

// writeArchive writes the docker-archive atomically: a temporary file beside
// out, renamed over it once complete.
func writeArchive(out string, tag name.Tag, img v1.Image) error {
	f, err := os.CreateTemp(filepath.Dir(out), ".nodetrust-image-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := tarball.Write(tag, img, f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// report prints one line: what was written, its image ID and sizes.
func report(w io.Writer, opts options, img v1.Image) error {
	id, err := img.ConfigName()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var compressed int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return err
		}
		compressed += n
	}
	st, err := os.Stat(opts.out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s: %s %s, image ID %s, layer %s compressed, archive %s\n",
		opts.out, opts.tag.Name(), opts.platform.String(), id, mib(compressed), mib(st.Size()))
	return err
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
