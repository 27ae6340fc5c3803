"""Text machinery: tokenizers (bytes, BPE, SentencePiece, imported) and their training, the
stream encodings, documents and the token cache, captions."""
