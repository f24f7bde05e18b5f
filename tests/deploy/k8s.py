"""Validates rendered Kubernetes objects for tests/deploy.rs.

    k8s.py validate < rendered.yaml

Every document of the YAML stream on stdin (`kubectl kustomize`'s or
`helm template`'s output) is validated strictly (an unknown field is an
error) against the Kubernetes schemas kubernetes-validate bundles, for
every Kubernetes version from MIN_VERSION to the newest it knows. Prints
{"documents": [...], "versions": [...]} as JSON on stdout, so the test
reads the objects without a YAML parser of its own; any problem goes to
stderr with exit status 1.
"""

import json
import sys

import kubernetes_validate
import kubernetes_validate.utils
import yaml

# Native sidecars (an init container with restartPolicy: Always) are 1.29+.
MIN_VERSION = (1, 29)


def versions():
    found = []
    for version in sorted(set(kubernetes_validate.utils.all_versions())):
        major, minor = (int(p) for p in version.split(".")[:2])
        if (major, minor) >= MIN_VERSION:
            found.append(version)
    found.sort(key=lambda v: tuple(int(p) for p in v.split(".")))
    if not found:
        sys.exit(f"kubernetes-validate knows no version from {MIN_VERSION}")
    return found


def validate(documents):
    problems = []
    checked = versions()
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        for version in checked:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{name} against {version}: {path}: {e.message}")
            except Exception as e:  # no schema for the kind, etc.
                problems.append(f"{name} against {version}: {e}")
    if problems:
        sys.exit("invalid:\n" + "\n".join(problems))
    return checked


def load_stream(text):
    return [d for d in yaml.safe_load_all(text) if d is not None]


def main(argv):
    if len(argv) >= 2 and argv[1] == "validate":
        documents = load_stream(sys.stdin.read())
        out = {"documents": documents, "versions": validate(documents)}
    else:
        sys.exit(__doc__)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
