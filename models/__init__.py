"""Code that more than one stage needs: the classifier, checkpoint I/O, the results store and the CLI wrapper.

Stages (finetune, eval, soups, plots) import from here and never from each other.
"""
