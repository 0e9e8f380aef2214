"""The layering the design asks for, read from the code's own import statements.

``shared/`` is the floor and imports nothing above it; the gateway routes to services without
importing them (it serves the generated OpenAPI document instead); no service imports a sibling.
A new arrow that breaks this fails here, naming the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from apidoc.document import DOCUMENT_FILE, is_current

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("user_service", "visit_service", "audit_service", "anonymizer")
ABOVE_SHARED = (*SERVICES, "gateway", "fe_server", "resharder", "apidoc", "deploy", "bench")

# package -> the top-level packages it must never import.
FORBIDDEN = {
    "shared": ABOVE_SHARED,
    "gateway": (*SERVICES, "fe_server", "apidoc", "resharder"),
    **{svc: tuple(p for p in (*SERVICES, "gateway", "fe_server") if p != svc) for svc in SERVICES},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every import in ``path``, nested imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def violations(package: str) -> list[str]:
    banned = set(FORBIDDEN[package])
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(imported_packages(path) & banned)
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_crosses_the_layers(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    # The rule must be able to fail: a module importing a service is caught, nested or not.
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from user_service.models import User\n")
    assert imported_packages(module) == {"os", "user_service"}


def test_the_served_openapi_document_is_the_generated_one() -> None:
    assert is_current(), f"{DOCUMENT_FILE.name} is stale: run `python -m apidoc`"


# Where each package declares its aiohttp app keys: one module per package.
APPKEY_MODULES = {
    "shared": "shared/appkeys.py",
    "gateway": "gateway/appkeys.py",
    "user_service": "user_service/consent_routes.py",
    "audit_service": "audit_service/routes.py",
    "anonymizer": "anonymizer/routes.py",
}
CODE_PACKAGES = (*ABOVE_SHARED, "shared")


def app_keys(path: Path) -> list[str]:
    """The names of the ``web.AppKey(...)`` objects ``path`` declares."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "AppKey" and node.args and isinstance(node.args[0], ast.Constant):
                found.append(str(node.args[0].value))
    return found


def declared_app_keys() -> dict[str, list[str]]:
    """Module path -> the app key names it declares, for every module that declares one."""
    return {
        str(path.relative_to(ROOT)): keys
        for package in CODE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (keys := app_keys(path))
    }


def test_app_keys_are_declared_in_one_module_per_package_with_unique_names() -> None:
    declared = declared_app_keys()
    assert set(declared) == set(APPKEY_MODULES.values())
    names = [name for keys in declared.values() for name in keys]
    assert sorted(names) == sorted(set(names)), "two app keys share a name"


def test_the_app_key_check_sees_a_stray_key(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('from aiohttp import web\nK = web.AppKey("k", int)\nJ = AppKey("j")\n')
    assert app_keys(module) == ["k", "j"]
