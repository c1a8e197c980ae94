"""The sequence classifier that mpcft fine-tunes, as a transformers model: a BERT encoder, mean
pooling of its last hidden state over the attention mask, then a linear head.

No stock transformers class pools this way (BertForSequenceClassification classifies the
pooler's tanh of the [CLS] token), so `mpcft finetune` copies this file into the model folder
it writes, and config.json's `auto_map` names its classes for
`transformers.pipeline("text-classification", model=folder, trust_remote_code=True)`,
`AutoModelForSequenceClassification` (this classifier) and `AutoModel` (the encoder alone),
each with `trust_remote_code=True`. The folder's model type is `mpcft_bert`, not `bert`, so
that a load without this file fails instead of quietly building BertForSequenceClassification
(whose [CLS] pooler would take the trained weights and predict something else).

Texts longer than the run's `--seq-len` (config.json: `mpcft.seq_len`) are cut inside
`forward` as the tokenizer's truncation cuts them (the first tokens, then the closing special
tokens), so untruncated inputs (a pipeline's) predict what mpcft's evaluation predicts.

Self-contained: it imports only torch and transformers.
"""
import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MpcftBertConfig(BertConfig):
    """BertConfig with mpcft's options in its attribute `mpcft`: {"pooling": "mean",
    "seq_len": tokens kept per text, "special_tokens_at_end": special tokens the tokenizer
    closes a text with (1, [SEP]), "add_pooling_layer": whether the encoder keeps its pooler}."""

    model_type = "mpcft_bert"


class MpcftBertModel(BertModel):
    """The fine-tuned encoder alone (AutoModel): BertModel under the mpcft_bert model type."""

    config_class = MpcftBertConfig

    def __init__(self, config, add_pooling_layer=None):
        if add_pooling_layer is None:
            add_pooling_layer = (getattr(config, "mpcft", None) or {}).get("add_pooling_layer", True)
        super().__init__(config, add_pooling_layer=add_pooling_layer)


class MpcftBertForSequenceClassification(BertPreTrainedModel):
    """logits = classifier(mean over unmasked tokens of bert(...).last_hidden_state)."""

    config_class = MpcftBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        options = getattr(config, "mpcft", None) or {}
        if options.get("pooling", "mean") != "mean":
            raise ValueError(f"mpcft pooling {options['pooling']!r}: only 'mean' is known")
        self.seq_len = options.get("seq_len")
        self.special_tokens_at_end = options.get("special_tokens_at_end", 1)
        self.bert = MpcftBertModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def truncate(self, attention_mask, *tensors):
        """Each row cut to seq_len tokens as tokenizer truncation cuts it: a text of n > seq_len
        tokens (padding masked out, on either side) keeps its first seq_len - e tokens and its
        last e, the closing special tokens (e = special_tokens_at_end); shorter ones keep all.
        Returns (attention_mask, *tensors) of seq_len positions, padding on the right."""
        limit, tail = self.seq_len, self.special_tokens_at_end
        if limit is None or attention_mask.shape[1] <= limit:
            return (attention_mask,) + tensors
        real_first = torch.sort((attention_mask == 0).to(torch.int8), dim=1, stable=True).indices
        positions = torch.arange(limit, device=attention_mask.device)[None, :]
        shift = (attention_mask.sum(1) - limit).clamp(min=0)[:, None]
        index = real_first.gather(1, positions + (positions >= limit - tail) * shift)    # [B, seq_len]

        def cut(t):
            if t is None:
                return None
            rows = index.view(index.shape + (1,) * (t.dim() - 2)).expand(index.shape + t.shape[2:])
            return t.gather(1, rows)
        return (cut(attention_mask),) + tuple(cut(t) for t in tensors)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        reference = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        attention_mask, input_ids, token_type_ids, inputs_embeds = self.truncate(
            attention_mask, input_ids, token_type_ids, inputs_embeds)
        if position_ids is not None:
            position_ids = position_ids[:, :attention_mask.shape[1]]
        kwargs.pop("use_cache", None)
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state
        mask = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)
