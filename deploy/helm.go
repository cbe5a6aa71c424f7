package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// RenderChart renders the Helm chart in dir as `helm template` would for a
// release of that name and namespace, with values merged over the chart's
// values.yaml, and returns its objects in a stable order. Rendering in-process
// keeps the tests hermetic: no helm binary is needed.
func RenderChart(dir, release, namespace string, values map[string]any) ([]*unstructured.Unstructured, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("loading chart %s: %w", dir, err)
	}
	if values == nil {
		values = map[string]any{}
	}
	if err := chartutil.ProcessDependencies(chrt, values); err != nil {
		return nil, fmt.Errorf("chart %s dependencies: %w", dir, err)
	}
	vals, err := chartutil.ToRenderValues(chrt, values,
		chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true, Revision: 1},
		chartutil.DefaultCapabilities)
	if err != nil {
		return nil, fmt.Errorf("chart %s values: %w", dir, err)
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		return nil, fmt.Errorf("rendering chart %s: %w", dir, err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if path.Ext(name) == ".yaml" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var objs []*unstructured.Unstructured
	for _, name := range names {
		docs, err := splitObjects(files[name])
		if err != nil {
			return nil, fmt.Errorf("chart %s: %s: %w", dir, name, err)
		}
		objs = append(objs, docs...)
	}
	return objs, nil
}

// splitObjects parses a multi-document YAML stream, skipping empty documents
// (a template whose condition is false renders to comments only).
func splitObjects(stream string) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(stream)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("invalid YAML: %w\n%s", err, bytes.TrimSpace(doc))
		}
		if s := string(bytes.TrimSpace(js)); s == "null" || s == "{}" {
			continue
		}
		obj := &unstructured.Unstructured{}
		// UnmarshalJSON types numbers as int64 or float64, as the API does.
		if err := obj.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("not a Kubernetes object: %w\n%s", err, bytes.TrimSpace(doc))
		}
		objs = append(objs, obj)
	}
}
