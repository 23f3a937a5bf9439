"""PTZ relay: ONVIF, Pelco-D and VISCA drivers, the operator arbiter and the ``ptz`` command."""
