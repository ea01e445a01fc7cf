"""The public API: declared, importable, free of private types, pinned."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

import pytest
import sklearn
from packaging.requirements import Requirement
from packaging.version import Version

import sklearn_beta
from sklearn_beta import metrics

PUBLIC_MODULES = (
    "sklearn_beta",
    "sklearn_beta.datasets",
    "sklearn_beta.exceptions",
    "sklearn_beta.io",
    "sklearn_beta.metrics",
    "sklearn_beta.model_selection",
    "sklearn_beta.plotting",
)
#: The package's internal types; none may appear in a public signature.
PRIVATE_TYPES = ("Timeline", "TraceGrid", "TraceFit", "PhaseArrays", "PressureProfile")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _public_objects():
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            yield f"{name}.{attr}", getattr(module, attr)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_declares_all(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list | tuple) and module.__all__
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr}"


def _annotations(obj):
    targets = [obj]
    if inspect.isclass(obj):
        targets = [getattr(obj, m) for m in vars(obj) if not m.startswith("_")]
        targets.append(obj.__init__)
    for target in targets:
        if callable(target):
            try:
                signature = inspect.signature(target)
            except (TypeError, ValueError):
                continue
            for parameter in signature.parameters.values():
                yield _spelled(parameter.annotation)
            yield _spelled(signature.return_annotation)


def _spelled(annotation) -> str:
    # Classes by their name: a public class may live in a private module.
    return annotation.__name__ if inspect.isclass(annotation) else str(annotation)


def test_no_private_type_in_a_public_signature():
    offenders = []
    for name, obj in _public_objects():
        for annotation in _annotations(obj):
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", annotation))
            if words & set(PRIVATE_TYPES) or any(
                w.startswith("_") and w != "_empty" for w in words
            ):
                offenders.append((name, annotation))
    assert not offenders


def test_scorers_use_no_private_scikit_learn_class():
    for scorer in (metrics.get_scorer("duration_r2"), metrics.phase_scorers()):
        for cls in type(scorer).__mro__:
            assert not cls.__module__.startswith("sklearn."), cls


def test_predefined_scorers_cannot_be_changed_from_outside():
    assert not hasattr(metrics, "SCORERS")
    names = metrics.get_scorer_names()
    names.append("mine")
    assert "mine" not in metrics.get_scorer_names()


def test_running_scikit_learn_is_inside_the_pin():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if d.startswith("scikit-learn")]
    assert any(spec.operator == "<" for spec in pin.specifier), "no upper bound"
    assert Version(sklearn.__version__) in pin.specifier


def test_renamed_names_still_import():
    # The split of the iterative module keeps the public names at the top.
    for name in (
        "IterativeBetaRegressor",
        "IterativeResult",
        "estimate_betas_iterative",
        "PhaseColumns",
        "design_at_betas",
    ):
        assert name in sklearn_beta.__all__
