"""Coding: structure specs, tensor encodings (dense now; sparse, Huffman, ANS) and the artifact."""
