// Command measure prints the structure measures issue 11 tracks: function
// length (median, p90, max) outside tests, the largest file, the number of
// go.mod files and the lines of test harness.
//
// Usage: go run ./tools/measure [root]
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type fn struct {
	name  string
	lines int
}

func main() {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	if err := run(root); err != nil {
		fmt.Fprintln(os.Stderr, "measure:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	var fns []fn
	var largest fn
	mods, harness := 0, 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(root, path)
		switch {
		case d.Name() == "go.mod":
			mods++
		case !strings.HasSuffix(path, ".go"):
		case strings.HasPrefix(rel, "test"+string(filepath.Separator)):
			n, err := countLines(path)
			if err != nil {
				return err
			}
			harness += n
		case strings.HasSuffix(path, "_test.go"), strings.Contains(rel, "tools"+string(filepath.Separator)):
		default:
			n, err := countLines(path)
			if err != nil {
				return err
			}
			if n > largest.lines {
				largest = fn{rel, n}
			}
			f, err := funcs(path, rel)
			if err != nil {
				return err
			}
			fns = append(fns, f...)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].lines < fns[j].lines })
	if len(fns) == 0 {
		return fmt.Errorf("no functions under %s", root)
	}
	pct := func(p int) int { return fns[(len(fns)-1)*p/100].lines }
	fmt.Printf("functions outside tests: %d\n", len(fns))
	fmt.Printf("function length: median %d, p90 %d, max %d (%s)\n", pct(50), pct(90), fns[len(fns)-1].lines, fns[len(fns)-1].name)
	over := 0
	for _, f := range fns {
		if f.lines > 50 {
			over++
		}
	}
	fmt.Printf("functions over 50 lines: %d\n", over)
	for i := len(fns) - 1; i >= 0 && fns[i].lines > 50; i-- {
		fmt.Printf("  %4d %s\n", fns[i].lines, fns[i].name)
	}
	fmt.Printf("largest file: %s (%d lines)\n", largest.name, largest.lines)
	fmt.Printf("go.mod files: %d\n", mods)
	fmt.Printf("harness lines (test/): %d\n", harness)
	return nil
}

func countLines(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strings.Count(string(b), "\n"), nil
}

// funcs returns every function and method declared in path with its length
// in lines, from the line of func to the line of its closing brace.
func funcs(path, rel string) ([]fn, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		return nil, err
	}
	var out []fn
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Body == nil {
			continue
		}
		name := fd.Name.Name
		if fd.Recv != nil && len(fd.Recv.List) > 0 {
			name = recv(fd.Recv.List[0].Type) + "." + name
		}
		lines := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
		out = append(out, fn{rel + ":" + name, lines})
	}
	return out, nil
}

func recv(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return recv(t.X)
	case *ast.IndexExpr:
		return recv(t.X)
	case *ast.Ident:
		return t.Name
	}
	return "?"
}
