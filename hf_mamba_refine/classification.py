"""``MambaForSequenceClassification``: a Mamba backbone, token pooling and a linear head.

Registered with ``AutoModelForSequenceClassification`` for ``MambaConfig`` when ``hf_mamba_refine`` is
imported.
"""

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, MambaConfig, MambaModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.mamba.modeling_mamba import MambaPreTrainedModel

POOLINGS = ("mean", "last")


class MambaForSequenceClassification(MambaPreTrainedModel):
    """Mamba with a sequence-level head: ``logits = score(pool(backbone(x)))``.

    ``config.classifier_pooling`` selects ``"mean"`` (masked mean over tokens, the default) or ``"last"`` (the
    rightmost token with ``attention_mask == 1``; only meaningful for causal mixers, not after reordering).
    ``config.num_labels`` and ``config.problem_type`` follow the usual transformers conventions.

    Shapes:
        - **input_ids / attention_mask:** ``[B, L]``; **logits:** ``[B, num_labels]``.
    """

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        pooling = getattr(config, "classifier_pooling", "mean")
        if pooling not in POOLINGS:
            raise ValueError(f"config.classifier_pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.num_labels = config.num_labels
        self.backbone = MambaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.backbone.set_input_embeddings(new_embeddings)

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Pool ``[B, L, H]`` to ``[B, H]`` over the tokens where ``attention_mask`` is 1."""
        batch, length = hidden_states.shape[:2]
        mask = (
            torch.ones(batch, length, device=hidden_states.device)
            if attention_mask is None
            else attention_mask.to(hidden_states.device, hidden_states.dtype)
        )
        if self.pooling == "mean":
            return (hidden_states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        positions = torch.arange(length, device=hidden_states.device)
        last = (positions * mask.long()).argmax(-1)
        return hidden_states[torch.arange(batch, device=hidden_states.device), last]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | SequenceClassifierOutput:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.backbone(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            use_cache=False,
            return_dict=True,
        )
        logits = self.score(self.pool(outputs.last_hidden_state, attention_mask)).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if output_hidden_states else ())
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


AutoModelForSequenceClassification.register(MambaConfig, MambaForSequenceClassification, exist_ok=True)
