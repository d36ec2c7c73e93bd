"""The kernels layer: the routed LoRA operation ``y = W0·x + scale·B[b]·U[u]·A[a]·x`` per row.

Owns the row plan (:mod:`.plan`: rows grouped by route, built once and shared by every layer), the specification
(:mod:`.reference`, plain PyTorch), backend dispatch (:mod:`.dispatch`), the operation with its autograd and
``torch.library`` registration (:mod:`.op`) and the backends of the compiled extension ``lora_route._C``
(:mod:`.extension` loads it; :mod:`.cuda_ext` its CUDA kernels, :mod:`.cpu_ext` its CPU kernels). It knows nothing
of languages or models; it may import only :mod:`lora_route.common`, the compiled extension and
``lora_route.triton_kernels`` (which imports nothing of lora_route).
"""
