"""minilvlm's model components: one file per component (see DESIGN.md, "Layers")."""
from minilvlm.models.adapters import MMAdapter, ModalityToken, RepAdapter  # noqa: F401
