"""The notebook lab: the notebook series, papermill batch runs, recorded metrics."""
