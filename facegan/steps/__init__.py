"""GAN training phases, one file per family (`facegan.steps.dcgan`, ...).

Each family's steps object exposes `phases` (e.g. ("d_step", "g_step")) and one method per phase
returning (loss to backward, detached 0-dim scalars); the loop owns optimizers and schedules.
Families are reached through `facegan.models.FAMILIES`, so this package re-exports nothing.
"""
