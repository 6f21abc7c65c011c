"""Evaluation pieces the tasks share: retrieval and calibration metrics, attacks, corruptions, COCO AP."""
