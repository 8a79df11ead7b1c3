"""Our additions to the published method, each a small part that ``models.build.build_model`` plugs in.

They were developed on the offline synthetic world, whose frozen *random* ViT has no useful CLS attention and whose
tokens keep too little of a patch's look (docs/offline_proof.md measures each). Every one is off in the AGD20K and
reference configurations, which run the published method:

- :mod:`models.extensions.appearance`: seven per-patch colour and texture statistics appended to the descriptors;
- :mod:`models.extensions.centring`: part prototypes compared after subtracting the running mean descriptor;
- :mod:`models.extensions.contrast`: the part prototype chosen by class contrast instead of PartIoU;
- :mod:`models.extensions.oracle`: a diagnostic that hands the model the true part prototypes;
- :mod:`models.extensions.pooling`: top-k pooling of the class maps instead of global average pooling;
- :mod:`models.extensions.object_prior`: the model's own class-agnostic object map mixed into each prediction.
"""
