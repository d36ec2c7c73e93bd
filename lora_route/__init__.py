"""lora_route: language-routed LoRA adapters for multilingual machine translation.

Every row of a batch may use a different adapter and the whole batch still runs as one fused kernel per layer.
"""
from lora_route.adapters.config import METHODS, RoutedLoRAConfig
from lora_route.adapters.params import ParameterCount, count_parameters
from lora_route.adapters.patch import apply_routed_lora, route, routed_modules
from lora_route.kernels.dispatch import backends, resolve_backend
from lora_route.kernels.op import routed_linear, routed_lora_delta
from lora_route.kernels.plan import RoutePlan, plan_routes

__version__ = "0.1.0"
__all__ = ["backends", "resolve_backend", "routed_linear", "routed_lora_delta", "RoutePlan", "plan_routes",
           "METHODS", "RoutedLoRAConfig", "apply_routed_lora", "route", "routed_modules",
           "ParameterCount", "count_parameters"]
