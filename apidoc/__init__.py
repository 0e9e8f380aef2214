"""The build step that writes the public OpenAPI document.

The services own their request and response models; this package gathers them into the one
table of operations (:mod:`apidoc.operations`) and renders the document
(:mod:`apidoc.openapi`). ``python -m apidoc`` writes it to :data:`apidoc.document.DOCUMENT_FILE`,
a committed file the gateway serves as it is, so that neither the gateway nor ``shared/``
imports a service; ``python -m apidoc --check`` fails when the committed file is stale.
"""
