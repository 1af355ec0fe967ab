"""The RCMed model family: hierarchical vision encoder, SAM prompt encoder and mask decoder
(mapping onto LiteMedSAM), and pretrained-weight fetching."""
