"""Training: failed scenarios become validated data, and TRL trainers learn from it with the
rubric as reward.

Modules are imported where they are used (the data modules need no torch); this
package root imports nothing, so that loading it stays cheap.
"""
