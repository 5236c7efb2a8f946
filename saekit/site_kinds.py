"""The kinds of activation site inside one transformer block: the ``kind`` of ``blocks.{layer}.{kind}``.

Kept below every stage so that ``dictionaries`` (which may not import ``models``) can recognise site
names in other libraries' files; ``models/sites.py`` parses and validates the names themselves.
"""

# In execution order inside one block (for a sequential block; parallel-attention blocks differ,
# which is why capture stops on "all sites seen", not on this order).
SITE_KINDS = ("resid_pre", "attn_out", "mlp_in", "mlp_act", "mlp_out", "resid_post")
