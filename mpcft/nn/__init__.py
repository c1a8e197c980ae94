"""MPC neural-network layers on SharedTensors with autograd, a BERT classifier, PEFT-style
choice of what is trained, and the SGD and AdamW optimizers."""
from mpcft.autograd import no_grad

from . import functional, grad_sample   # importing grad_sample registers the per-example samplers
from .bert import Attention, BertLayer, MeanPool
from .classifier import GRAD_SCALE, Classifier, count_correct
from .layers import GELU, LayerNorm, Linear, LoRALinear
from .module import Module, Parameter
from .optim import SGD, AdamW
from .peft import MODES, apply_lora, mpc_layer_count, prepare, train_module, write_back

__all__ = ["Attention", "AdamW", "BertLayer", "Classifier", "GELU", "GRAD_SCALE", "LayerNorm", "Linear",
           "LoRALinear", "MODES", "MeanPool", "Module", "Parameter", "SGD", "apply_lora", "count_correct",
           "functional", "grad_sample", "mpc_layer_count", "no_grad", "prepare", "train_module", "write_back"]
