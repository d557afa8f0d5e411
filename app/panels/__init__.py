"""The editing window's docked panels: mixing, truncation, noise & transform, model.

Each panel takes the EditSession, builds next states with the engine's helpers and redraws from
`session.changed`; none does tensor maths.
"""
