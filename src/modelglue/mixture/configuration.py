"""Config classes of the block- and model-level mixtures.

Kept apart from the models so that registering them with AutoConfig needs only
transformers' configuration module, not the modeling stack.
"""
from __future__ import annotations

from transformers.configuration_utils import PretrainedConfig

MODEL_MIXTURE_TYPE = "modelglue_model_mixture"
BLOCK_MIXTURE_TYPE = "modelglue_block_mixture"


class ModelMixtureConfig(PretrainedConfig):
    """A router that picks one whole expert model per prompt.

    experts: each expert's config as a dict (experts may differ in architecture/size).
    router:  {"kind", "features": "hidden"|"embed", "encoder": expert index whose
             features the router reads, "layer": hidden_states index, "pooling",
             "normalize", "dim"}.
    """

    model_type = MODEL_MIXTURE_TYPE

    def __init__(self, experts: list[dict] | None = None, expert_names: list[str] | None = None,
                 router: dict | None = None, vocab_size: int | None = None, shared_tokenizer: bool = True,
                 **kwargs):
        self.experts = list(experts or [])
        self.expert_names = list(expert_names or [f"expert_{i}" for i in range(len(self.experts))])
        self.router = dict(router or {})
        self.vocab_size = vocab_size
        # False: each expert reads its own tokenizer (saved under tokenizers/<i>/); only the
        # text API (generate_text) can drive such a mixture.
        self.shared_tokenizer = shared_tokenizer
        kwargs.setdefault("tie_word_embeddings", False)  # the experts tie their own weights
        super().__init__(**kwargs)


class BlockMixtureConfig(PretrainedConfig):
    """Whole decoder blocks as experts, routed once per sequence.

    base: the config of the model that holds embeddings, norms, head and the first
    `num_dense_layers` blocks; every later block is `num_experts` blocks (one per
    expert) behind a gate that reads the block's input pooled over the prompt.
    """

    model_type = BLOCK_MIXTURE_TYPE

    def __init__(self, base: dict | None = None, num_experts: int = 2, num_dense_layers: int = 0,
                 num_experts_per_tok: int = 1, pooling: str = "mean", expert_names: list[str] | None = None, **kwargs):
        self.base = dict(base or {})
        self.num_experts = num_experts
        self.num_dense_layers = num_dense_layers
        self.num_experts_per_tok = num_experts_per_tok  # "top_k" would be read as a generation flag
        self.pooling = pooling
        self.expert_names = list(expert_names or [f"expert_{i}" for i in range(num_experts)])
        if self.base:
            for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
                if key in self.base:
                    kwargs.setdefault(key, self.base[key])
        kwargs.setdefault("tie_word_embeddings", False)  # the inner model ties its own weights
        super().__init__(**kwargs)


def register_configs() -> None:
    """Make AutoConfig know the mixture model types (idempotent)."""
    from transformers.models.auto.configuration_auto import AutoConfig

    for model_type, cls in ((MODEL_MIXTURE_TYPE, ModelMixtureConfig), (BLOCK_MIXTURE_TYPE, BlockMixtureConfig)):
        AutoConfig.register(model_type, cls, exist_ok=True)


register_configs()  # idempotent; covers importing this module before the Auto classes
