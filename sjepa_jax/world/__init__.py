"""The embedded multi-view world: pure-JAX scene, dynamics, ray-cast views, overlap.

Submodules keep their names (``world.render.render``, ``world.overlap.overlap``); the
package re-exports only names that do not shadow a submodule.
"""

from sjepa_jax.world.episodes import Episode, observe, sample_episode
from sjepa_jax.world.overlap import overlap_matrix
from sjepa_jax.world.render import Frame
from sjepa_jax.world.scene import (NUM_CLASSES, WorldState, labels, random_actions,
                                   random_state, rollout, state_features,
                                   step)
from sjepa_jax.world.views import VIEWS, View, get_view, parse_views, stack_views
