"""bob-workbook's helper package: registry, data, features, tasks, batches, results, analysis."""

__version__ = "0.1.0"
