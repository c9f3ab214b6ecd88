"""Validates rendered Kubernetes manifests: built-in kinds with kubernetes-validate (strict,
against the oldest supported and the newest Kubernetes), custom resources against their
projects' published CRD schemas (validate-crds.mjs). Every object must pass one or the
other; an object neither knows is an error.

Usage: check.py NODE_MODULES_DIR FILE...    (prints one line per file; exit 1 on any error)
"""

import json
import os
import subprocess
import sys

import yaml
from kubernetes_validate import utils

KUBERNETES_VERSIONS = ["1.30.0", utils.latest_version()]
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
HERE = os.path.dirname(os.path.abspath(__file__))


def check_file(path, node_modules):
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    errors, custom = [], []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            for version in KUBERNETES_VERSIONS:
                utils.validate(obj, version, strict=True)
        except utils.SchemaNotFoundError:
            if obj.get("apiVersion", "").startswith(CUSTOM_GROUPS):
                custom.append(obj)
            else:
                errors.append(f"{name}: no schema for {obj.get('apiVersion')}")
        except utils.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {where}: {e.message}")
    if custom:
        # Node resolves the script's imports from the node_modules beside it.
        script = os.path.join(HERE, "validate-crds.mjs")
        link = os.path.join(os.path.dirname(node_modules), "validate-crds.mjs")
        with open(script) as src, open(link, "w") as dst:
            dst.write(src.read())
        out = subprocess.run(
            ["node", link], input=json.dumps(custom), capture_output=True, text=True
        )
        if out.returncode != 0:
            errors.append(f"CRD validation failed to run: {out.stderr.strip()}")
        else:
            for result in json.loads(out.stdout):
                if result["error"]:
                    errors.append(f"{result['kind']}/{result['name']}: {result['error']}")
    builtin = len(objects) - len(custom)
    print(
        f"{path}: {len(objects)} objects, {builtin} against Kubernetes "
        f"{' and '.join(v.rsplit('.', 1)[0] for v in KUBERNETES_VERSIONS)}, "
        f"{len(custom)} against CRD schemas: {'ok' if not errors else 'INVALID'}"
    )
    for error in errors:
        print(f"  ERROR {error}")
    return not errors


def main():
    node_modules, files = sys.argv[1], sys.argv[2:]
    if not files:
        sys.exit(__doc__)
    ok = all([check_file(f, node_modules) for f in files])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
