"""Render a kustomization without the kustomize binary: the subset the generated tree uses.

``kubectl kustomize`` (or ``kustomize build``) is what operators run; this module exists so
that the test suite can render and validate the overlays on a machine without either. It
supports ``resources`` (files and folders), ``namespace``, ``configMapGenerator`` and
``secretGenerator`` (``files``, ``literals``, ``envs``) with kustomize's name-suffix hash and
the rewriting of references to the generated names, ``replicas``, ``images`` and inline
strategic-merge ``patches`` matched by kind and name. Anything else in a kustomization is an
error rather than silently ignored. Where a kustomize binary is available, the tests compare
the two renders.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "configMapGenerator",
             "secretGenerator", "replicas", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render (or that is wrong)."""


def build(folder: Path) -> list[Obj]:
    """The objects ``kustomize build folder`` produces (generated names hashed)."""
    objs, _ = _build(Path(folder))
    return objs


def _build(folder: Path) -> tuple[list[Obj], dict[tuple[str, str], str]]:
    path = folder / "kustomization.yaml"
    if not path.exists():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    kz = yaml.safe_load(path.read_text()) or {}
    unknown = set(kz) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
    objs: list[Obj] = []
    renamed: dict[tuple[str, str], str] = {}
    for entry in kz.get("resources", []):
        target = folder / entry
        if target.is_dir():
            sub, sub_renamed = _build(target)
            objs += sub
            renamed.update(sub_renamed)
        else:
            objs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    mine: dict[tuple[str, str], str] = {}
    for gen in kz.get("configMapGenerator", []):
        obj = _generated("ConfigMap", folder, gen)
        mine[("ConfigMap", gen["name"])] = obj["metadata"]["name"]
        objs.append(obj)
    for gen in kz.get("secretGenerator", []):
        obj = _generated("Secret", folder, gen)
        mine[("Secret", gen["name"])] = obj["metadata"]["name"]
        objs.append(obj)
    for patch in kz.get("patches", []):
        _apply_patch(objs, patch, path)
    if "namespace" in kz:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kz["namespace"]
            # As kustomize does: a binding's service accounts are in the namespace too.
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = kz["namespace"]
    for rep in kz.get("replicas", []):
        hits = [o for o in objs if o["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}
                and o["metadata"]["name"] == rep["name"]]
        if not hits:
            raise KustomizeError(f"{path}: replicas: no workload named {rep['name']}")
        for obj in hits:
            obj["spec"]["replicas"] = rep["count"]
    for image in kz.get("images", []):
        for container in _containers(objs):
            if _image_name(container["image"]) == image["name"]:
                name = image.get("newName", image["name"])
                tag = image.get("newTag")
                container["image"] = f"{name}:{tag}" if tag else name
    _rename_references(objs, mine)
    renamed.update(mine)
    return objs, renamed


def _generated(kind: str, folder: Path, gen: Obj) -> Obj:
    data: dict[str, str] = {}
    for item in gen.get("files", []):
        key, _, rel = item.rpartition("=") if "=" in item else ("", "", item)
        data[key or Path(rel).name] = (folder / rel).read_text()
    for item in gen.get("literals", []):
        key, _, value = item.partition("=")
        data[key] = value
    for env_file in gen.get("envs", []):
        for line in (folder / env_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key] = value
    name = gen["name"]
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    if not gen.get("options", {}).get("disableNameSuffixHash"):
        obj["metadata"]["name"] = f"{name}-{name_hash(obj)}"
    return obj


def name_hash(obj: Obj) -> str:
    """kustomize's suffix: SHA-256 of a JSON of kind, name and data (and type), 10 characters.

    Vowel-like hex digits are mapped to consonants, as kustomize does, so that no word forms.
    """
    fields: Obj = {"kind": obj["kind"], "name": obj["metadata"]["name"], "data": obj["data"]}
    if obj["kind"] == "Secret":
        fields["type"] = obj["type"]
    # Go's json.Marshal: sorted keys, no spaces, <, > and & escaped.
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _apply_patch(objs: list[Obj], patch: Obj, path: Path) -> None:
    if set(patch) != {"patch"}:
        raise KustomizeError(f"{path}: only inline strategic-merge patches are supported")
    body = yaml.safe_load(patch["patch"])
    hits = [o for o in objs if o["kind"] == body["kind"]
            and o["metadata"]["name"] == body["metadata"]["name"]]
    if len(hits) != 1:
        raise KustomizeError(f"{path}: patch matches {len(hits)} objects")
    merged = merge(hits[0], body)
    hits[0].clear()
    hits[0].update(merged)


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge: maps merge, lists of named items merge by name, null deletes."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out_list = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def pod_specs(objs: list[Obj]) -> Iterator[Obj]:
    """The pod spec of every workload."""
    for obj in objs:
        kind = obj["kind"]
        if kind == "Pod":
            yield obj["spec"]
        elif kind == "CronJob":
            yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind in WORKLOADS:
            yield obj["spec"]["template"]["spec"]


def _containers(objs: list[Obj]) -> Iterator[Obj]:
    for spec in pod_specs(objs):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def _image_name(image: str) -> str:
    return image.split("@", 1)[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def _rename_references(objs: list[Obj], renamed: dict[tuple[str, str], str]) -> None:
    """Point every reference to a generated ConfigMap or Secret at its hashed name."""
    if not renamed:
        return

    def fix(ref: Obj | None, kind: str, key: str = "name") -> None:
        if ref is not None and (kind, ref.get(key)) in renamed:
            ref[key] = renamed[(kind, ref[key])]

    for spec in pod_specs(objs):
        for vol in spec.get("volumes", []):
            fix(vol.get("configMap"), "ConfigMap")
            fix(vol.get("secret"), "Secret", "secretName")
            for src in vol.get("projected", {}).get("sources", []):
                fix(src.get("configMap"), "ConfigMap")
                fix(src.get("secret"), "Secret")
        for ref in spec.get("imagePullSecrets", []):
            fix(ref, "Secret")
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for env in c.get("env", []):
                source = env.get("valueFrom", {})
                fix(source.get("configMapKeyRef"), "ConfigMap")
                fix(source.get("secretKeyRef"), "Secret")
            for env_from in c.get("envFrom", []):
                fix(env_from.get("configMapRef"), "ConfigMap")
                fix(env_from.get("secretRef"), "Secret")
