"""The embedded multi-view world: pure-JAX scene, dynamics, ray-cast views, overlap."""

from sjepa_jax.world.episodes import Episode, observe, sample_episode
from sjepa_jax.world.overlap import overlap, overlap_matrix
from sjepa_jax.world.render import Frame, render
from sjepa_jax.world.scene import (NUM_CLASSES, WorldState, labels, random_actions,
                                   random_state, rollout, step)
from sjepa_jax.world.views import VIEWS, View, get_view, parse_views, stack_views
