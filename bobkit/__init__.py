"""bob-workbook's helper package: registry, data, features, tasks, batches, results, analysis."""

import warnings

__version__ = "0.1.0"

# timm's imports load tqdm.auto, which in a notebook kernel without ipywidgets warns "IProgress not found" into every
# executed notebook. bobkit's own progress bars are plain tqdm (bobkit.utils.progress) and never need the widget.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
