"""Analysis: MLAS-LoRA's layer relevance, neuron awareness, sub-matrix extraction and SVD initialisation
(:mod:`.relevance`, :mod:`.awareness`, :mod:`.extraction`, :mod:`.mlas`) and DAT's conflict / synergy analysis
(:mod:`.conflicts`).

A top layer beside :mod:`lora_route.bench` and :mod:`lora_route.experiments` (independent of both): it may import
training, evaluation and everything below them.
"""
from lora_route.analysis.awareness import (
    AwarenessScores,
    NeuronSplit,
    neuron_awareness,
    normalise_awareness,
    split_neurons,
)
from lora_route.analysis.extraction import Extraction, extract_submatrix
from lora_route.analysis.relevance import (
    decoder_layers,
    layer_relevance,
    map_teacher_to_student,
    project_layer_scores,
    random_layers,
    select_top_layers,
)

__all__ = [
    "AwarenessScores", "NeuronSplit", "neuron_awareness", "normalise_awareness", "split_neurons",
    "Extraction", "extract_submatrix",
    "decoder_layers", "layer_relevance", "map_teacher_to_student", "project_layer_scores", "random_layers",
    "select_top_layers",
]
