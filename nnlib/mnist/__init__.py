"""The MNIST application on nnlib: config, data, images and predict, the CLI, plots and reports.

The library (``nnlib`` itself) never imports this package.
"""
