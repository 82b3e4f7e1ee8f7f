"""Import paths of the original Open-Retrievals (``retrievals.tools.langchain``); the code lives in
:mod:`retrievals.integrations`."""
