# SPDX-License-Identifier: ISC
"""qtools - SMTP-phase anti-spam chain programs for qmail."""

__version__ = "0.1.0"
