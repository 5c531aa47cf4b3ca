"""The export stage: a variant -> files other tools load.

    folder.py         export(variant, folder): a transformers folder + its recipe, reloaded and checked
    gguf.py           export_gguf(variant, path): one GGUF file for llama.cpp
    gguf_families.py  what GGUF export knows of each family, one record per family
    gguf_tokenizer.py the tokenizer as GGUF metadata
"""
