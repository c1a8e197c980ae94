"""MPC neural-network layers with explicit backward passes, a BERT classifier, SGD and AdamW."""
from .bert import Attention, BertLayer, MeanPool
from .classifier import MODES, Classifier, count_correct, mpc_layer_count
from .layers import GELU, LayerNorm, Linear, LoRALinear
from .module import Module, Parameter
from .optim import SGD, AdamW

__all__ = ["Attention", "BertLayer", "Classifier", "count_correct", "GELU", "LayerNorm", "Linear", "LoRALinear",
           "MODES", "MeanPool", "Module", "Parameter", "SGD", "AdamW", "mpc_layer_count"]
