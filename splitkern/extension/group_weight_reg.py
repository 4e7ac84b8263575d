"""The group weight regulariser's two GEMMs on the compiled extension (csrc/group_weight_reg.cpp)."""

import torch

_ops = torch.ops.splitkern


def group_weight_reg_gemms(weight, p, q):
    return _ops.ext_group_weight_reg_gemms(weight, p, q)


def group_weight_reg_gemms_backward(weight, p, q, grad_a, grad_b):
    return _ops.ext_group_weight_reg_gemms_backward(weight, p, q, grad_a, grad_b)
