"""The toy world: a client of the library, like any user script.

Importing it registers the `toy://` location scheme (`stjax.locations`): `toy://NAME/...`
names an asset of the world (tokenizer, models, data files), built on first use.
"""

from stjax.locations import register_scheme
from stjax.toy.build import resolve_asset

register_scheme("toy", resolve_asset)
