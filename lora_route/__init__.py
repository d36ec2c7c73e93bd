"""lora_route: language-routed LoRA adapters for multilingual machine translation.

Every row of a batch may use a different adapter and the whole batch still runs as one fused kernel per layer.
"""
from .ops import backends, resolve_backend, routed_linear, routed_lora_delta
from .plan import RoutePlan, plan_routes
from .methods import METHODS, RoutedLoRAConfig
from .params import ParameterCount, count_parameters
from .patch import apply_routed_lora, route, routed_modules

__version__ = "0.1.0"
__all__ = ["backends", "resolve_backend", "routed_linear", "routed_lora_delta", "RoutePlan", "plan_routes",
           "METHODS", "RoutedLoRAConfig", "apply_routed_lora", "route", "routed_modules",
           "ParameterCount", "count_parameters"]
