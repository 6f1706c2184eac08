"""One module per task of the catalogue, named as the task, each holding ANALYSIS (workers.analysis.Analysis).

Why a package of its own: workers.tasks finds a task's implementation from its catalogue name alone, so
adding a task to tasks.proto takes a module here and no registration list. The machinery each analysis
uses stays in its own package (workers.kernel_viz, workers.tconv, workers.class_filters, workers.inventory).
"""
