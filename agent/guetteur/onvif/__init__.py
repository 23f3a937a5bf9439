"""ONVIF: the one SOAP client (soap.py) and the device-service calls PTZ and discovery share."""
