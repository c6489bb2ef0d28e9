"""The code a pruned Hugging Face model's directory carries, so that plain ``transformers``
loads it (``from_pretrained(dir, trust_remote_code=True)``) where vitprune is not installed.

The two modules here are copied verbatim into the directory by
:meth:`vitprune.adapters.hf_vit.HFAdapter.save_files`; they import transformers and torch only,
never vitprune. vitprune itself never imports them.
"""

#: the files copied into a pruned model's directory, in this package
FILES = ("configuration_vitprune.py", "modeling_vitprune.py")
