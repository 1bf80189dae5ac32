variable "greeting" {
  type        = string
  description = "What the demo module says."
  default     = "hello from ferry"
}
