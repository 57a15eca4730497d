"""Code both sides of a federation share: settings, models, metrics, record formats.

Nothing in here touches pixels, DICOM or Flower's processes; `fedmed.common` imports
neither `fedmed.client` nor `fedmed.server`.
"""
