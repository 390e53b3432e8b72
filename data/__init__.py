"""Data pipeline: corpus -> tokenizer -> tokenized documents -> packed, resumable rows.

data.corpus     offline Python-source corpus from stdlib + site-packages, split by package
data.tokenizer  byte-level BPE tokenizer with <|endoftext|>, ChatML and <|mask|> tokens
data.datasets   load hub or local text/chat datasets and tokenize them into documents
data.packing    pack documents into seq_len rows with per-document position_ids
"""
