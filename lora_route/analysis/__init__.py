"""MLAS-LoRA analysis (seed 002: layer relevance, neuron awareness, sub-matrix extraction, SVD initialisation) and
the conflict / synergy analysis of seed 003."""
from .awareness import AwarenessScores, NeuronSplit, neuron_awareness, normalise_awareness, split_neurons
from .extraction import Extraction, extract_submatrix
from .relevance import (
    decoder_layers, layer_relevance, map_teacher_to_student, project_layer_scores, random_layers, select_top_layers,
)
from .svd_init import discarded_energy, low_rank_factors

__all__ = [
    "AwarenessScores", "NeuronSplit", "neuron_awareness", "normalise_awareness", "split_neurons",
    "Extraction", "extract_submatrix",
    "decoder_layers", "layer_relevance", "map_teacher_to_student", "project_layer_scores", "random_layers",
    "select_top_layers",
    "discarded_energy", "low_rank_factors",
]
